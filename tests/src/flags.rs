//! The benchmark programs' command lines: `--name value` pairs, with numbers checked.

use anyhow::{Context as _, bail};

/// The `--name value` pairs of `args`, in order; a flag without a value is an error naming
/// it, followed by `usage`. `--help` (or `-h`) anywhere prints `usage` and exits with 0.
pub fn pairs<'a>(args: &'a [String], usage: &str) -> anyhow::Result<Vec<(&'a str, &'a str)>> {
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{usage}");
        std::process::exit(0);
    }
    let mut pairs = Vec::with_capacity(args.len() / 2);
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("`{flag}` needs a value\n{usage}"))?;
        pairs.push((flag.as_str(), value.as_str()));
    }
    Ok(pairs)
}

/// `text`, the value of `flag`, as a finite number of at least zero.
pub fn number(flag: &str, text: &str) -> anyhow::Result<f64> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => bail!("`{flag}` `{text}` must be a number of at least 0"),
    }
}

/// `text`, the value of `flag`, as a finite number above zero.
pub fn positive(flag: &str, text: &str) -> anyhow::Result<f64> {
    match number(flag, text) {
        Ok(value) if value > 0.0 => Ok(value),
        _ => bail!("`{flag}` `{text}` must be a positive number"),
    }
}

/// `text`, the value of `flag`, as a whole number above zero.
pub fn count(flag: &str, text: &str) -> anyhow::Result<usize> {
    match text.parse::<usize>() {
        Ok(value) if value > 0 => Ok(value),
        _ => bail!("`{flag}` `{text}` must be a whole number above 0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    #[test]
    fn flags_pair_with_their_values() {
        let words = args(&["--hosts", "10", "--seconds", "2.5"]);
        assert_eq!(
            pairs(&words, "usage").unwrap(),
            [("--hosts", "10"), ("--seconds", "2.5")]
        );
        let error = pairs(&args(&["--hosts", "10", "--runs"]), "usage: x")
            .unwrap_err()
            .to_string();
        assert_eq!(error, "`--runs` needs a value\nusage: x");
    }

    #[test]
    fn numbers_are_checked_and_named() {
        assert_eq!(number("--interval", "0").unwrap(), 0.0);
        assert_eq!(positive("--seconds", "2.5").unwrap(), 2.5);
        assert_eq!(count("--runs", "3").unwrap(), 3);
        for (result, text) in [
            (number("--interval", "-1"), "`--interval` `-1`"),
            (number("--interval", "NaN"), "`--interval` `NaN`"),
            (positive("--seconds", "0"), "`--seconds` `0`"),
            (positive("--seconds", "soon"), "`--seconds` `soon`"),
        ] {
            assert!(result.unwrap_err().to_string().starts_with(text));
        }
        for text in ["0", "2.5", "many"] {
            let error = count("--runs", text).unwrap_err().to_string();
            assert!(error.starts_with(&format!("`--runs` `{text}`")), "{error}");
        }
    }
}
