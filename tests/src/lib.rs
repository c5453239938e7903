//! Cross-crate integration and end-to-end tests live in `tests/tests/`; this library holds the
//! checks several of them share.

use std::fmt::{Debug, Display};

/// What is wrong with one bad-input catalogue case's `outcome`, if anything: it must be an
/// error for which `variant` holds, with a message containing `names` (the field, tensor, file
/// or reason at fault). `accepted` says what a wrong success produced.
pub fn named_error_failure<T, E: Debug + Display>(
    case: &str,
    outcome: Result<T, E>,
    variant: fn(&E) -> bool,
    names: &str,
    accepted: impl FnOnce(T) -> String,
) -> Option<String> {
    match outcome {
        Ok(value) => Some(format!("{case}: {}", accepted(value))),
        Err(e) if !variant(&e) => Some(format!("{case}: wrong error variant: {e:?}")),
        Err(e) if !e.to_string().contains(names) => {
            Some(format!("{case}: message does not name {names:?}: {e}"))
        }
        Err(_) => None,
    }
}

/// Fails the test with every catalogue failure, one a line, where there are any (after the
/// whole catalogue ran, so one run shows them all).
#[track_caller]
pub fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "catalogue failures:\n{}",
        failures.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::named_error_failure;

    fn even(e: &u32) -> bool {
        e.is_multiple_of(2)
    }

    #[test]
    fn each_wrong_outcome_is_reported_and_the_expected_error_passes() {
        let check = |outcome: Result<&str, u32>, names| {
            named_error_failure("case", outcome, even, names, |v| format!("accepted {v}"))
        };
        assert_eq!(check(Ok("x"), "").as_deref(), Some("case: accepted x"));
        assert_eq!(
            check(Err(3), "3").as_deref(),
            Some("case: wrong error variant: 3")
        );
        assert_eq!(
            check(Err(4), "5").as_deref(),
            Some("case: message does not name \"5\": 4")
        );
        assert_eq!(check(Err(42), "4"), None);
    }
}
