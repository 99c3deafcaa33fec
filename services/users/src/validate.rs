//! The identity context's input rules, each returning the field violation a
//! caller sees.

use std::str::FromStr;

use chrono::NaiveTime;
use mesh_runtime::FieldViolation;

pub const DEFAULT_LANGUAGE: &str = "es";
pub const DEFAULT_TIMEZONE: &str = "America/Bogota";

/// E.164 (`+573001234567`) or WhatsApp wa_id digits (`573001234567`), with
/// spaces, dashes, dots and parentheses tolerated -> `+573001234567`.
pub fn phone(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let compact: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = compact.strip_prefix('+').unwrap_or(&compact);
    let e164 = format!("+{digits}");
    if mesh_runtime::validate::is_e164(&e164) {
        Ok(e164)
    } else {
        Err(FieldViolation::new(
            field,
            "must be an E.164 number (+ then 8 to 15 digits, not starting with 0) or WhatsApp wa_id digits",
        ))
    }
}

/// A Telegram user id: positive (they can need 52 bits, hence i64).
pub fn telegram_user_id(field: &str, id: i64) -> Result<i64, FieldViolation> {
    if id > 0 {
        Ok(id)
    } else {
        Err(FieldViolation::new(
            field,
            "must be a positive Telegram user id",
        ))
    }
}

/// ISO 639-1 code, any case -> lower case; empty -> `default`.
pub fn language(field: &str, raw: &str, default: &str) -> Result<String, FieldViolation> {
    if raw.is_empty() {
        return Ok(default.to_owned());
    }
    let code = raw.to_ascii_lowercase();
    if code.len() == 2 && ISO_639_1.split(' ').any(|known| known == code) {
        Ok(code)
    } else {
        Err(FieldViolation::new(
            field,
            "must be an ISO 639-1 language code such as \"es\" or \"en\"",
        ))
    }
}

/// IANA time zone name; empty -> the default.
pub fn timezone(field: &str, raw: &str) -> Result<String, FieldViolation> {
    if raw.is_empty() {
        return Ok(DEFAULT_TIMEZONE.to_owned());
    }
    chrono_tz::Tz::from_str(raw)
        .map(|tz| tz.name().to_owned())
        .map_err(|_| {
            FieldViolation::new(
                field,
                "must be an IANA time zone name such as \"America/Bogota\"",
            )
        })
}

/// Local "HH:MM" (24 h).
pub fn local_time(field: &str, raw: &str) -> Result<NaiveTime, FieldViolation> {
    NaiveTime::parse_from_str(raw, "%H:%M")
        .map_err(|_| FieldViolation::new(field, "must be a local time \"HH:MM\" (00:00 to 23:59)"))
}

/// Optional local time: empty means unset.
pub fn optional_local_time(field: &str, raw: &str) -> Result<Option<NaiveTime>, FieldViolation> {
    if raw.is_empty() {
        Ok(None)
    } else {
        local_time(field, raw).map(Some)
    }
}

pub fn format_local_time(time: NaiveTime) -> String {
    time.format("%H:%M").to_string()
}

/// At most `max` characters (not bytes).
pub fn max_chars(field: &str, value: &str, max: usize) -> Result<(), FieldViolation> {
    if value.chars().count() > max {
        Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ))
    } else {
        Ok(())
    }
}

/// Trimmed, 1 to `max` characters.
pub fn required_name(field: &str, value: &str, max: usize) -> Result<String, FieldViolation> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    max_chars(field, trimmed, max)?;
    Ok(trimmed.to_owned())
}

/// A lower-case identifier: a letter, then letters, digits and any of `extra`.
pub fn identifier(field: &str, value: &str, max: usize, extra: &str) -> Result<(), FieldViolation> {
    let mut chars = value.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c));
    if starts_well && rest_ok && value.len() <= max {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            format!(
                "must start with a-z and hold only a-z, 0-9 and {extra:?}, at most {max} characters"
            ),
        ))
    }
}

const ISO_639_1: &str = "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch \
co cr cs cu cv cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho \
hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb \
lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa \
pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk \
tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_normalise_to_e164() {
        assert_eq!(phone("p", "573001234567").unwrap(), "+573001234567");
        assert_eq!(phone("p", "+57 300 123-4567").unwrap(), "+573001234567");
        assert_eq!(phone("p", "16505551234").unwrap(), "+16505551234");
        for bad in [
            "",
            "+",
            "0573001234567",
            "+1234567",
            "+1234567890123456",
            "57300abc4567",
            "++573001234567",
        ] {
            assert!(phone("p", bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn languages_timezones_and_times() {
        assert_eq!(language("l", "", "es").unwrap(), "es");
        assert_eq!(language("l", "EN", "es").unwrap(), "en");
        assert!(language("l", "xx", "es").is_err());
        assert!(language("l", "eng", "es").is_err());
        assert_eq!(timezone("t", "").unwrap(), DEFAULT_TIMEZONE);
        assert_eq!(timezone("t", "Europe/Madrid").unwrap(), "Europe/Madrid");
        assert!(timezone("t", "Mars/Olympus").is_err());
        assert_eq!(
            format_local_time(local_time("c", "07:30").unwrap()),
            "07:30"
        );
        assert!(local_time("c", "24:00").is_err());
        assert!(local_time("c", "7").is_err());
    }

    #[test]
    fn identifiers() {
        assert!(identifier("s", "welcome_1", 64, "_").is_ok());
        assert!(identifier("s", "1welcome", 64, "_").is_err());
        assert!(identifier("s", "Welcome", 64, "_").is_err());
        assert!(identifier("s", "", 64, "_").is_err());
        assert!(identifier("f", "chat.v2-beta", 100, "_-.").is_ok());
    }
}
