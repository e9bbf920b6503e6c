//! Reading typed values out of WMI rows and registry values, as the reading layer recorded
//! them (JSON). WMI hands `uint64` and `sint64` properties over as strings, dates as CIM
//! datetimes (`20230115083000.000000+060`) and multi-valued properties as arrays; every
//! accessor accepts exactly what WMI gives and turns anything else into a problem that names
//! the class, the property and the value.

use serde_json::Value;
use std::collections::BTreeMap;

/// One WMI instance (or one registry key's values): property name → value.
pub type Row = BTreeMap<String, Value>;

/// A row together with where it came from, so that every complaint names it.
#[derive(Debug, Clone, Copy)]
pub struct Props<'a> {
    /// `Win32_DiskDrive`, or a registry path.
    pub class: &'a str,
    pub row: &'a Row,
}

impl<'a> Props<'a> {
    pub fn new(class: &'a str, row: &'a Row) -> Props<'a> {
        Props { class, row }
    }

    fn get(&self, property: &str) -> Option<&'a Value> {
        self.row.get(property).filter(|value| !value.is_null())
    }

    fn complain(&self, property: &str, expected: &str, value: &Value) -> String {
        format!(
            "`{}.{}` is not {expected}: {}",
            self.class,
            property,
            excerpt(value)
        )
    }

    /// The property as trimmed text; numbers and booleans in their JSON form, `""` when null
    /// or absent (WMI leaves unknown properties null).
    pub fn text(&self, property: &str) -> String {
        match self.get(property) {
            Some(Value::String(text)) => text.trim().to_string(),
            Some(Value::Number(number)) => number.to_string(),
            Some(Value::Bool(flag)) => flag.to_string(),
            _ => String::new(),
        }
    }

    /// An unsigned integer, given as a JSON number or (uint64) as a decimal string.
    pub fn unsigned(&self, property: &str, problems: &mut Vec<String>) -> Option<u64> {
        let value = self.get(property)?;
        let parsed = match value {
            Value::Number(number) => number.as_u64(),
            Value::String(text) if text.trim().is_empty() => return None,
            Value::String(text) => text.trim().parse::<u64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            problems.push(self.complain(property, "an unsigned integer", value));
        }
        parsed
    }

    /// Like [`Props::unsigned`], for properties that fit in 32 bits (counts, MHz, codes).
    pub fn unsigned32(&self, property: &str, problems: &mut Vec<String>) -> Option<u32> {
        let value = self.unsigned(property, problems)?;
        let narrowed = u32::try_from(value).ok();
        if narrowed.is_none() {
            problems.push(self.complain(
                property,
                "a 32-bit unsigned integer",
                &Value::from(value),
            ));
        }
        narrowed
    }

    pub fn boolean(&self, property: &str, problems: &mut Vec<String>) -> Option<bool> {
        let value = self.get(property)?;
        match value {
            Value::Bool(flag) => Some(*flag),
            _ => {
                problems.push(self.complain(property, "a boolean", value));
                None
            }
        }
    }

    /// A multi-valued property (`IPAddress`, `ChassisTypes`) as text items; a lone value
    /// counts as a list of one.
    pub fn list(&self, property: &str, problems: &mut Vec<String>) -> Vec<String> {
        let Some(value) = self.get(property) else {
            return Vec::new();
        };
        let items: &[Value] = match value {
            Value::Array(items) => items,
            single => std::slice::from_ref(single),
        };
        let mut texts = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(text) => texts.push(text.trim().to_string()),
                Value::Number(number) => texts.push(number.to_string()),
                other => problems.push(self.complain(property, "a list of values", other)),
            }
        }
        texts.retain(|text| !text.is_empty());
        texts
    }

    /// A CIM datetime property as a Unix time (UTC); `None` when null, a problem when malformed.
    pub fn datetime(&self, property: &str, problems: &mut Vec<String>) -> Option<i64> {
        let value = self.get(property)?;
        let parsed = value.as_str().and_then(parse_cim_datetime);
        if parsed.is_none() {
            problems.push(self.complain(property, "a CIM datetime", value));
        }
        parsed
    }
}

/// A short, quoted rendering of a value for messages (long values are cut).
fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(77).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// Parses a CIM datetime, `yyyymmddHHMMSS.mmmmmmsUUU` where `sUUU` is the offset from UTC in
/// minutes (`+060` is UTC+1), into a Unix time. Fields WMI does not know are written as `*`:
/// an unknown time of day counts as midnight and an unknown offset as UTC; an unknown date is
/// no date at all.
pub fn parse_cim_datetime(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.len() != 25 || !text.is_ascii() {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<Option<i64>> {
        let field = &text[range];
        if field.bytes().all(|byte| byte == b'*') {
            Some(None)
        } else if field.bytes().all(|byte| byte.is_ascii_digit()) {
            field.parse().ok().map(Some)
        } else {
            None
        }
    };
    let year = digits(0..4)??;
    let month = digits(4..6)??;
    let day = digits(6..8)??;
    let hour = digits(8..10)?.unwrap_or(0);
    let minute = digits(10..12)?.unwrap_or(0);
    let second = digits(12..14)?.unwrap_or(0);
    digits(15..21)?; // microseconds: checked, not kept
    if &text[14..15] != "." {
        return None;
    }
    let sign = match &text[21..22] {
        "+" => 1,
        "-" => -1,
        _ => return None,
    };
    let offset_minutes = digits(22..25)?.unwrap_or(0) * sign;
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = crate::calendar::days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses the `YYYYMMDD` install dates of Uninstall keys, and the `M/D/YYYY` dates of
/// `Win32_QuickFixEngineering.InstalledOn`, into `YYYY-MM-DD`.
pub fn parse_windows_date(text: &str) -> Option<String> {
    let text = text.trim();
    let (year, month, day) = if text.len() == 8 && text.bytes().all(|b| b.is_ascii_digit()) {
        (
            text[0..4].parse::<i64>().ok()?,
            text[4..6].parse::<i64>().ok()?,
            text[6..8].parse::<i64>().ok()?,
        )
    } else {
        let mut parts = text.split('/');
        let month = parts.next()?.parse::<i64>().ok()?;
        let day = parts.next()?.parse::<i64>().ok()?;
        let year = parts.next()?.parse::<i64>().ok()?;
        if parts.next().is_some() {
            return None;
        }
        (year, month, day)
    };
    let valid = (1900..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day);
    valid.then(|| format!("{year:04}-{month:02}-{day:02}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cim_datetimes_honour_their_utc_offset() {
        // 08:30 at UTC+1 is 07:30 UTC.
        assert_eq!(
            parse_cim_datetime("20230115083000.000000+060"),
            Some(1_673_767_800)
        );
        assert_eq!(
            parse_cim_datetime("20230115073000.000000+000"),
            Some(1_673_767_800)
        );
        // 02:30 at UTC-5 is 07:30 UTC.
        assert_eq!(
            parse_cim_datetime("20230115023000.000000-300"),
            Some(1_673_767_800)
        );
        // India (+330) crosses the day boundary backwards.
        assert_eq!(
            parse_cim_datetime("20230115010000.500000+330"),
            Some(1_673_724_600)
        );
        // BIOS release dates: time and offset unknown.
        assert_eq!(
            parse_cim_datetime("20221104******.******+***"),
            Some(1_667_520_000)
        );
        assert_eq!(
            parse_cim_datetime("20240229000000.000000+000"),
            Some(1_709_164_800)
        );
    }

    #[test]
    fn malformed_cim_datetimes_are_rejected() {
        for bad in [
            "",
            "2023-01-15T08:30:00Z",
            "20230115083000.000000",
            "20230115083000.000000*060",
            "20231315083000.000000+060",
            "20230229083000.000000+060",
            "20230115253000.000000+060",
            "2023011508300a.000000+060",
            "********083000.000000+060",
            "20230115083000,000000+060",
        ] {
            assert_eq!(parse_cim_datetime(bad), None, "{bad}");
        }
    }

    #[test]
    fn windows_dates_in_both_forms() {
        assert_eq!(
            parse_windows_date("20230115").as_deref(),
            Some("2023-01-15")
        );
        assert_eq!(
            parse_windows_date("1/5/2024").as_deref(),
            Some("2024-01-05")
        );
        assert_eq!(
            parse_windows_date("12/31/2023").as_deref(),
            Some("2023-12-31")
        );
        assert_eq!(parse_windows_date("20231301"), None);
        assert_eq!(parse_windows_date("2/30/2024"), None);
        assert_eq!(parse_windows_date("01d9a6b4c5e3f000"), None);
        assert_eq!(parse_windows_date(""), None);
    }

    #[test]
    fn accessors_take_what_wmi_gives_and_name_what_they_refuse() {
        let row: Row = serde_json::from_value(json!({
            "Size": "512105932800",
            "Index": 0,
            "Bad": "12 GB",
            "Negative": -4,
            "Flag": true,
            "NotFlag": "yes",
            "Addresses": ["10.0.0.5", "fe80::1"],
            "Lone": "10.0.0.1",
            "Mixed": ["a", {"b": 1}],
            "Null": null,
            "Name": "  DC01 ",
        }))
        .unwrap();
        let props = Props::new("Win32_Test", &row);
        let mut problems = Vec::new();
        assert_eq!(props.unsigned("Size", &mut problems), Some(512_105_932_800));
        assert_eq!(props.unsigned32("Index", &mut problems), Some(0));
        assert_eq!(props.unsigned("Null", &mut problems), None);
        assert_eq!(props.unsigned("Missing", &mut problems), None);
        assert_eq!(props.boolean("Flag", &mut problems), Some(true));
        assert_eq!(
            props.list("Addresses", &mut problems),
            ["10.0.0.5", "fe80::1"]
        );
        assert_eq!(props.list("Lone", &mut problems), ["10.0.0.1"]);
        assert_eq!(props.text("Name"), "DC01");
        assert_eq!(props.text("Null"), "");
        assert!(problems.is_empty(), "{problems:?}");

        assert_eq!(props.unsigned("Bad", &mut problems), None);
        assert_eq!(props.unsigned("Negative", &mut problems), None);
        assert_eq!(props.unsigned32("Size", &mut problems), None);
        assert_eq!(props.boolean("NotFlag", &mut problems), None);
        assert_eq!(props.list("Mixed", &mut problems), ["a"]);
        assert_eq!(props.datetime("Name", &mut problems), None);
        assert_eq!(
            problems,
            [
                "`Win32_Test.Bad` is not an unsigned integer: \"12 GB\"",
                "`Win32_Test.Negative` is not an unsigned integer: -4",
                "`Win32_Test.Size` is not a 32-bit unsigned integer: 512105932800",
                "`Win32_Test.NotFlag` is not a boolean: \"yes\"",
                "`Win32_Test.Mixed` is not a list of values: {\"b\":1}",
                "`Win32_Test.Name` is not a CIM datetime: \"  DC01 \"",
            ]
        );
    }
}
