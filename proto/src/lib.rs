//! The `estate.v1` wire contract: generated types and the gRPC service, nothing else.
//!
//! A later incompatible contract lives beside this one as `v2`.

pub mod v1 {
    #![allow(missing_debug_implementations, unused_qualifications)]
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("estate.v1");
}

/// Serialises [`v1::Outcome`] (an `i32` on the wire) by its short name in JSON:
/// `"pass"`, `"fail"`, `"skipped"`, `"unspecified"`.
mod outcome_as_name {
    use crate::v1::Outcome;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(name(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
        let text = String::deserialize(deserializer)?;
        let outcome = match text.as_str() {
            "pass" => Outcome::Pass,
            "fail" => Outcome::Fail,
            "skipped" => Outcome::Skipped,
            "unspecified" => Outcome::Unspecified,
            other => {
                return Err(serde::de::Error::custom(format!(
                    "unknown outcome `{other}`, expected one of `pass`, `fail`, `skipped`"
                )));
            }
        };
        Ok(outcome as i32)
    }

    pub fn name(value: i32) -> &'static str {
        match Outcome::try_from(value) {
            Ok(Outcome::Pass) => "pass",
            Ok(Outcome::Fail) => "fail",
            Ok(Outcome::Skipped) => "skipped",
            Ok(Outcome::Unspecified) | Err(_) => "unspecified",
        }
    }
}

pub use outcome_as_name::name as outcome_name;

#[cfg(test)]
mod tests {
    use super::v1::{CheckResult, Outcome};

    #[test]
    fn outcome_is_named_in_json_and_round_trips() {
        let result = CheckResult {
            check: "dc".into(),
            outcome: Outcome::Fail as i32,
            ..Default::default()
        };
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["outcome"], "fail");
        let back: CheckResult = serde_json::from_value(json).unwrap();
        assert_eq!(back.outcome, Outcome::Fail as i32);
    }
}
