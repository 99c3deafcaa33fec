//! Deserialization helpers shared by the parsers.
//!
//! The providers' envelopes are strict (a missing id is a 400), but the
//! type-specific sub-objects are read leniently: a WhatsApp delivery is retried
//! for 7 days on any non-200, so one odd sub-object must not reject the whole
//! batch. Each message keeps its raw JSON, so nothing read leniently is lost.

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::Value;

/// `Some(T)` when the field is present and has T's shape, `None` otherwise.
pub(crate) fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let v = Value::deserialize(d)?;
    Ok(T::deserialize(v).ok())
}

/// The elements of an array that have T's shape; anything else gives none.
pub(crate) fn lenient_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| T::deserialize(v).ok())
            .collect(),
        _ => Vec::new(),
    })
}

/// A list where `null` means empty (serde's `default` only covers absence).
pub(crate) fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}
