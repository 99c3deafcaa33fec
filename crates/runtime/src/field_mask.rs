//! Update RPCs name the fields they change in a `google.protobuf.FieldMask`.

use prost_types::FieldMask;

use crate::Violations;

/// The mask's paths, each checked against `allowed`, without repeats. An
/// absent or empty mask is refused: an update that names nothing is a mistake.
/// The violations can be merged with the request's others
/// ([`Violations::merge`]), or returned with `?`.
pub fn paths(mask: Option<&FieldMask>, allowed: &[&str]) -> Result<Vec<String>, Violations> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        return Err(Violations::default().add(
            "update_mask",
            format!("name at least one field to update: {}", allowed.join(", ")),
        ));
    }
    let mut violations = Violations::default();
    let mut out: Vec<String> = Vec::new();
    for path in paths {
        if !allowed.contains(&path.as_str()) {
            violations.push(
                "update_mask",
                format!(
                    "{path:?} cannot be updated; updatable: {}",
                    allowed.join(", ")
                ),
            );
        } else if !out.contains(path) {
            out.push(path.clone());
        }
    }
    if violations.is_empty() {
        Ok(out)
    } else {
        Err(violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(paths: &[&str]) -> FieldMask {
        FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn accepts_known_paths_once_and_refuses_the_rest() {
        let allowed = ["a", "b"];
        assert_eq!(
            paths(Some(&mask(&["b", "a", "b"])), &allowed).unwrap(),
            ["b", "a"]
        );
        assert!(paths(Some(&mask(&["c"])), &allowed).is_err());
        assert!(paths(Some(&mask(&[])), &allowed).is_err());
        assert!(paths(None, &allowed).is_err());
    }
}
