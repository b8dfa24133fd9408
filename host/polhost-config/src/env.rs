//! `${VAR}` substitution over the configuration text, as OPA does it before
//! parsing. Owns only the substitution; it never reads the process
//! environment itself (the caller passes a lookup).

/// The substituted text would be longer than the limit.
#[derive(Debug, PartialEq)]
pub(crate) struct TooLong;

/// Replaces every `${NAME}` in `text` with `lookup(NAME)`, or with the empty
/// string when the variable is undefined (OPA "plays by bash rules").
///
/// Same matching as OPA's regular expression `\$\{([^}]+)\}`: `NAME` is
/// everything up to the first `}` and must not be empty; `${}` and an
/// unclosed `${` stay as they are. Substituted text is not scanned again.
///
/// Stops once the result would pass `limit` bytes: a file of many
/// references to one large variable must not multiply it without bound.
pub(crate) fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    limit: usize,
) -> Result<String, TooLong> {
    if text.len() > limit {
        return Err(TooLong);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) if end > 0 => {
                let name = &after[..end];
                out.push_str(&rest[..start]);
                match lookup(name) {
                    Some(value) if out.len() + value.len() > limit => return Err(TooLong),
                    Some(value) => out.push_str(&value),
                    None => tracing::warn!(
                        variable = name,
                        "the configuration refers to an undefined environment variable: \
                         substituting an empty string"
                    ),
                }
                rest = &after[end + 1..];
            }
            // `${}`: no match here; the regex would try again at the `{`.
            Some(_) => {
                out.push_str(&rest[..start + 1]);
                rest = &rest[start + 1..];
            }
            // No `}` anywhere after: nothing more can match.
            None => break,
        }
    }
    if out.len() + rest.len() > limit {
        return Err(TooLong);
    }
    out.push_str(rest);
    Ok(out)
}

/// Looks `name` up in the process environment; `None` for names the
/// operating system cannot hold (empty, with `=` or NUL) instead of a panic.
pub fn process_env(name: &str) -> Option<String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return None;
    }
    std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::TooLong;

    fn substitute(text: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
        super::substitute(text, env, 1 << 20).unwrap()
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.com".to_string()),
            "TOKEN" => Some("s3cr3t".to_string()),
            "LOOP" => Some("${HOST}".to_string()),
            "${A" => Some("odd".to_string()),
            _ => None,
        }
    }

    #[test]
    fn defined_variables_are_replaced() {
        assert_eq!(
            substitute("url: https://${HOST}/v1 token: ${TOKEN}", &env),
            "url: https://example.com/v1 token: s3cr3t"
        );
    }

    #[test]
    fn undefined_variable_becomes_empty_string() {
        assert_eq!(substitute("a${MISSING}b", &env), "ab");
    }

    #[test]
    fn substituted_text_is_not_scanned_again() {
        assert_eq!(substitute("${LOOP}", &env), "${HOST}");
    }

    #[test]
    fn empty_braces_and_unclosed_dollar_brace_stay() {
        assert_eq!(substitute("${}${HOST}", &env), "${}example.com");
        assert_eq!(substitute("x ${HOST", &env), "x ${HOST");
        assert_eq!(substitute("$HOST and $ {HOST}", &env), "$HOST and $ {HOST}");
    }

    #[test]
    fn name_runs_to_the_first_closing_brace_like_opa_regex() {
        assert_eq!(substitute("${${A}}", &env), "odd}");
    }

    #[test]
    fn multibyte_text_around_variables_is_kept() {
        assert_eq!(substitute("é${HOST}ü", &env), "éexample.comü");
    }

    #[test]
    fn substitution_stops_at_the_limit() {
        let big = |_: &str| Some("x".repeat(1000));
        let text = "${A}".repeat(100);
        assert_eq!(super::substitute(&text, &big, 99_999), Err(TooLong));
        assert_eq!(
            super::substitute(&text, &big, 100_000).unwrap().len(),
            100_000
        );
        assert_eq!(super::substitute("abcd", &env, 3), Err(TooLong));
    }
}
