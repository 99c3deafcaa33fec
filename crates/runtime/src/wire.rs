//! The wire values every service checks the same way: enums stored as text,
//! bounded text, optional UUIDs, free-form JSON objects.
//!
//! [`text_enum!`] gives each enum `name(i32) -> Option<&str>` (None for
//! UNSPECIFIED or an unknown number), `parse(&str) -> pb enum` and
//! `require(field, i32)`, which names the allowed values (by their proto
//! names) when the caller sent something else.

use crate::FieldViolation;

/// `text_enum!(package::path; module, ProtoEnum { Variant => "stored", ... })`
#[macro_export]
macro_rules! text_enum {
    ($($package:ident)::+; $module:ident, $pb:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        // Every mapping offers the same functions; not every caller needs all.
        #[allow(dead_code)]
        pub mod $module {
            use $($package)::+::$pb;
            use $crate::FieldViolation;

            pub fn name(value: i32) -> Option<&'static str> {
                match $pb::try_from(value).ok()? {
                    $($pb::$variant => Some($text),)+
                    _ => None,
                }
            }

            pub fn parse(text: &str) -> $pb {
                match text {
                    $($text => $pb::$variant,)+
                    _ => $pb::Unspecified,
                }
            }

            /// The stored name of `value`, which must be one of the named values.
            pub fn require(field: &str, value: i32) -> Result<&'static str, FieldViolation> {
                name(value).ok_or_else(|| {
                    FieldViolation::new(
                        field,
                        format!(
                            "must be one of {}",
                            [$($pb::$variant.as_str_name()),+].join(", ")
                        ),
                    )
                })
            }

            /// Like [`require`], but UNSPECIFIED means "none given".
            pub fn optional(field: &str, value: i32) -> Result<Option<&'static str>, FieldViolation> {
                if value == 0 { Ok(None) } else { require(field, value).map(Some) }
            }
        }
    };
}

/// At most `max` characters (the contract counts characters, not bytes) and no NUL,
/// which Postgres text refuses.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), FieldViolation> {
    if value.contains('\0') {
        return Err(FieldViolation::new(field, "must not contain NUL"));
    }
    if value.chars().count() > max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// Like [`text`], and not empty.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<(), FieldViolation> {
    if value.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    text(field, value, max)
}

/// An optional UUID: empty means none.
pub fn optional_uuid(field: &str, value: &str) -> Result<Option<uuid::Uuid>, FieldViolation> {
    if value.is_empty() {
        Ok(None)
    } else {
        crate::convert::parse_uuid(field, value).map(Some)
    }
}

/// Empty text as NULL.
pub fn non_empty(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

/// The most a free-form JSON field (metadata, payloads, tool input) may hold.
pub const MAX_JSON_BYTES: usize = 64 * 1024;

/// A free-form protobuf Struct as a JSON object (`{}` when unset): at most
/// [`MAX_JSON_BYTES`] as JSON, and without U+0000, which Postgres' jsonb
/// refuses (it would otherwise surface as an error naming no field).
pub fn json_object(
    field: &str,
    value: Option<&prost_types::Struct>,
) -> Result<serde_json::Value, FieldViolation> {
    let json = value.map_or_else(|| serde_json::json!({}), crate::convert::struct_to_json);
    let text = json.to_string();
    if has_nul(&json) {
        return Err(FieldViolation::new(
            field,
            "must not contain the NUL character (U+0000)",
        ));
    }
    if text.len() > MAX_JSON_BYTES {
        return Err(FieldViolation::new(field, "must be at most 64 KiB as JSON"));
    }
    Ok(json)
}

/// Whether a key or string anywhere in `value` holds U+0000.
fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}
