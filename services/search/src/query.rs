//! The query language users type, and its caps. Every cap is checked on the
//! raw text before anything is parsed, and the parser builds only the few
//! clause kinds listed here, so tantivy never sees an expensive or
//! unexpected query.
//!
//! The language: words separated by spaces, all of which must match
//! (`hello world`); `"a phrase"` in quotes; `-word` to exclude; `*` and `?`
//! wildcards inside a word (`deploy*`, `gr?y`); and `word~` or `word~2` for
//! a fuzzy match within that many edits. Words are matched
//! case-insensitively, split on anything that is not a letter or digit,
//! exactly as messages are when they are indexed.

/// Longest query, in bytes after trimming.
pub const MAX_QUERY_BYTES: usize = 256;
/// Most whitespace-separated words.
pub const MAX_WORDS: usize = 20;
/// Most `*` and `?` together.
pub const MAX_WILDCARDS: usize = 4;
/// Most `~`.
pub const MAX_FUZZY: usize = 2;
/// The largest edit distance a fuzzy word may ask for.
pub const MAX_FUZZY_DISTANCE: u8 = 2;

/// Why a query was refused; the message says which rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query is empty")]
    Empty,
    #[error("the query is longer than {MAX_QUERY_BYTES} bytes")]
    TooLong,
    #[error("the query has more than {MAX_WORDS} words")]
    TooManyWords,
    #[error("the query has more than {MAX_WILDCARDS} wildcards (* or ?)")]
    TooManyWildcards,
    #[error("the query has more than {MAX_FUZZY} fuzzy markers (~)")]
    TooManyFuzzy,
    #[error("field syntax (:) is not supported")]
    FieldSyntax,
    #[error("malformed query: {0}")]
    Malformed(&'static str),
}

/// What one clause matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Plain text: one word, or several in a row when the text holds
    /// punctuation (`e-mail`) or was quoted.
    Text(String),
    /// A lowercase pattern of letters, digits, `*` and `?`.
    Wildcard(String),
    /// A lowercase word of letters and digits, within `distance` edits.
    Fuzzy { word: String, distance: u8 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// `-word`: documents matching it are left out.
    pub excluded: bool,
    pub matcher: Matcher,
}

/// A query that passed every cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuery {
    pub clauses: Vec<Clause>,
}

/// Checks the caps, then parses.
pub fn parse(raw: &str) -> Result<ParsedQuery, QueryError> {
    let text = raw.trim();
    check_caps(text)?;
    let clauses = split_units(text)?
        .into_iter()
        .map(clause)
        .collect::<Result<Vec<_>, _>>()?;
    if !clauses.iter().any(|c| !c.excluded) {
        return Err(QueryError::Malformed(
            "a query needs at least one word that is not excluded",
        ));
    }
    Ok(ParsedQuery { clauses })
}

fn check_caps(text: &str) -> Result<(), QueryError> {
    if text.is_empty() {
        return Err(QueryError::Empty);
    }
    if text.len() > MAX_QUERY_BYTES {
        return Err(QueryError::TooLong);
    }
    if text.split_whitespace().count() > MAX_WORDS {
        return Err(QueryError::TooManyWords);
    }
    if text.chars().filter(|c| matches!(c, '*' | '?')).count() > MAX_WILDCARDS {
        return Err(QueryError::TooManyWildcards);
    }
    if text.chars().filter(|&c| c == '~').count() > MAX_FUZZY {
        return Err(QueryError::TooManyFuzzy);
    }
    if text.contains(':') {
        return Err(QueryError::FieldSyntax);
    }
    if text.chars().any(char::is_control) {
        return Err(QueryError::Malformed("control characters are not allowed"));
    }
    Ok(())
}

/// A word or a quoted phrase, before it is interpreted.
struct Unit<'a> {
    excluded: bool,
    quoted: bool,
    text: &'a str,
}

fn split_units(text: &str) -> Result<Vec<Unit<'_>>, QueryError> {
    let mut units = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let (excluded, body) = match rest.strip_prefix('-') {
            Some(body) if body.starts_with(|c: char| !c.is_whitespace()) => (true, body),
            _ => (false, rest),
        };
        if let Some(quoted) = body.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or(QueryError::Malformed("a quote is not closed"))?;
            units.push(Unit {
                excluded,
                quoted: true,
                text: &quoted[..end],
            });
            rest = quoted[end + 1..].trim_start();
        } else {
            let end = body.find(char::is_whitespace).unwrap_or(body.len());
            let word = &body[..end];
            if word.contains('"') {
                return Err(QueryError::Malformed(
                    "quotes go around whole words or phrases",
                ));
            }
            units.push(Unit {
                excluded,
                quoted: false,
                text: word,
            });
            rest = body[end..].trim_start();
        }
    }
    Ok(units)
}

fn clause(unit: Unit<'_>) -> Result<Clause, QueryError> {
    let has_wildcard = unit.text.contains(['*', '?']);
    let has_fuzzy = unit.text.contains('~');
    let matcher = if unit.quoted {
        if has_wildcard || has_fuzzy {
            return Err(QueryError::Malformed(
                "wildcards and ~ cannot be used inside quotes",
            ));
        }
        Matcher::Text(unit.text.to_owned())
    } else if has_fuzzy {
        fuzzy(unit.text)?
    } else if has_wildcard {
        wildcard(unit.text)?
    } else {
        Matcher::Text(unit.text.to_owned())
    };
    Ok(Clause {
        excluded: unit.excluded,
        matcher,
    })
}

fn fuzzy(word: &str) -> Result<Matcher, QueryError> {
    const SHAPE: &str = "a fuzzy word is letters and digits followed by ~, ~1 or ~2";
    let (stem, distance) = word.split_once('~').ok_or(QueryError::Malformed(SHAPE))?;
    let distance = match distance {
        "" => 1,
        "1" => 1,
        "2" => MAX_FUZZY_DISTANCE,
        _ => return Err(QueryError::Malformed(SHAPE)),
    };
    if stem.is_empty() || !stem.chars().all(char::is_alphanumeric) {
        return Err(QueryError::Malformed(SHAPE));
    }
    Ok(Matcher::Fuzzy {
        word: stem.to_lowercase(),
        distance,
    })
}

fn wildcard(word: &str) -> Result<Matcher, QueryError> {
    if !word
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '*' | '?'))
    {
        return Err(QueryError::Malformed(
            "a wildcard word may hold only letters, digits, * and ?",
        ));
    }
    if !word.chars().any(char::is_alphanumeric) {
        return Err(QueryError::Malformed(
            "a wildcard word needs at least one letter or digit",
        ));
    }
    Ok(Matcher::Wildcard(word.to_lowercase()))
}

/// The regular expression of a wildcard pattern. Patterns hold only
/// letters, digits, `*` and `?`, so nothing else needs escaping.
pub fn wildcard_regex(pattern: &str) -> String {
    pattern
        .chars()
        .map(|c| match c {
            '*' => ".*".to_owned(),
            '?' => ".".to_owned(),
            other => other.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(word: &str) -> Clause {
        Clause {
            excluded: false,
            matcher: Matcher::Text(word.to_owned()),
        }
    }

    #[test]
    fn words_phrases_exclusions_wildcards_and_fuzzy_parse() {
        let parsed =
            parse(r#"  Hello "big world" -spam depl*y gr?y kitten~ sitting~2 "#).expect("valid");
        assert_eq!(
            parsed.clauses,
            vec![
                text("Hello"),
                text("big world"),
                Clause {
                    excluded: true,
                    matcher: Matcher::Text("spam".into())
                },
                Clause {
                    excluded: false,
                    matcher: Matcher::Wildcard("depl*y".into())
                },
                Clause {
                    excluded: false,
                    matcher: Matcher::Wildcard("gr?y".into())
                },
                Clause {
                    excluded: false,
                    matcher: Matcher::Fuzzy {
                        word: "kitten".into(),
                        distance: 1
                    }
                },
                Clause {
                    excluded: false,
                    matcher: Matcher::Fuzzy {
                        word: "sitting".into(),
                        distance: 2
                    }
                },
            ]
        );
        assert_eq!(wildcard_regex("depl*y"), "depl.*y");
        assert_eq!(wildcard_regex("gr?y"), "gr.y");
    }

    #[test]
    fn every_cap_is_enforced_at_its_boundary() {
        // Bytes: 256 pass, 257 fail (after trimming, which does not count).
        let at_cap = "a".repeat(MAX_QUERY_BYTES);
        assert!(parse(&format!("  {at_cap}  ")).is_ok());
        assert_eq!(parse(&format!("{at_cap}b")), Err(QueryError::TooLong));

        let words = |n: usize| vec!["w"; n].join(" ");
        assert!(parse(&words(MAX_WORDS)).is_ok());
        assert_eq!(parse(&words(MAX_WORDS + 1)), Err(QueryError::TooManyWords));

        assert!(parse("a* b* c? d?").is_ok());
        assert_eq!(parse("a* b* c? d? e*"), Err(QueryError::TooManyWildcards));
        assert_eq!(parse("a***** b"), Err(QueryError::TooManyWildcards));

        assert!(parse("kitten~ mitten~").is_ok());
        assert_eq!(parse("a~ b~ c~"), Err(QueryError::TooManyFuzzy));

        assert_eq!(parse("author:bob"), Err(QueryError::FieldSyntax));
        assert_eq!(parse("   "), Err(QueryError::Empty));
        assert_eq!(parse(""), Err(QueryError::Empty));
    }

    #[test]
    fn malformed_queries_are_refused_with_a_reason() {
        for bad in [
            r#""unclosed"#,
            r#"ab"cd"#,
            r#""wild*""#,
            "kitten~3",
            "kit~ten",
            "~",
            "*",
            "??",
            "foo-*",
            "-only",
            "a\u{7}b",
        ] {
            assert!(
                matches!(parse(bad), Err(QueryError::Malformed(_))),
                "{bad:?} should be malformed, got {:?}",
                parse(bad)
            );
        }
    }
}
