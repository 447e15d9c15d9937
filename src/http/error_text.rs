//! Bounds on the client text that GraphQL's own error messages quote.
//!
//! The engine builds parse and validation errors out of what the client sent:
//! a syntax error repeats the whole offending source line (and underlines it
//! with as many spaces), validation errors quote names, operation names and
//! variable values. A 60 KB one-line document came back as a 120 KB error. An
//! error needs only the place: it keeps its `locations`, and its message quotes
//! at most [`MAX_QUOTED_CHARS`] characters of any one piece of client text, cut
//! with `…`.

/// Most characters of one piece of client text an error message quotes: of a
/// source line, around the error's column; of a name or a quoted value, its
/// beginning.
pub const MAX_QUOTED_CHARS: usize = 80;

/// Most characters of a whole message, whatever it is made of.
pub const MAX_MESSAGE_CHARS: usize = 1024;

const ELLIPSIS: char = '…';

/// `message` with every piece of client text it quotes cut to at most
/// [`MAX_QUOTED_CHARS`] characters (see the module documentation). `column` is
/// the error's 1-based column, used when the message quotes a source line
/// without marking the place.
pub fn cap_client_text(message: &str, column: Option<usize>) -> String {
    let lines: Vec<&str> = message.split('\n').collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let Some((gutter, text)) = source_line(lines[i]) else {
            out.push(cap_quotes(&cap_runs(lines[i])));
            i += 1;
            continue;
        };
        // The syntax error's layout: ` 1 | source`, then `   |     ^---`.
        let marks = lines.get(i + 1).and_then(|l| underline(l));
        let focus = match &marks {
            Some(u) => u.padding.len(),
            None => column.unwrap_or(1).saturating_sub(1),
        };
        let excerpt = Excerpt::around(text, focus);
        out.push(format!("{gutter}{}", excerpt.text));
        match marks {
            Some(u) => {
                // The padding mirrors the line (a tab under a tab), so it is cut the same way.
                let mut line = u.gutter.to_owned();
                if excerpt.start > 0 {
                    line.push(' ');
                }
                line.push_str(u.padding.get(excerpt.start..).unwrap_or_default());
                line.extend(u.marks.chars().take(MAX_QUOTED_CHARS));
                out.push(line);
                i += 2;
            }
            None => i += 1,
        }
    }
    cut(&out.join("\n"), MAX_MESSAGE_CHARS).into_owned()
}

/// A window of at most [`MAX_QUOTED_CHARS`] characters of a line.
struct Excerpt {
    /// The window's first character, counted in characters of the line.
    start: usize,
    /// The window, with `…` where the line goes on.
    text: String,
}

impl Excerpt {
    fn around(line: &str, focus: usize) -> Self {
        let len = line.chars().count();
        if len <= MAX_QUOTED_CHARS {
            return Self { start: 0, text: line.to_owned() };
        }
        let focus = focus.min(len);
        let end = (focus.saturating_sub(MAX_QUOTED_CHARS / 2) + MAX_QUOTED_CHARS).min(len);
        let start = end - MAX_QUOTED_CHARS;
        let mut text = String::new();
        if start > 0 {
            text.push(ELLIPSIS);
        }
        text.extend(line.chars().skip(start).take(MAX_QUOTED_CHARS));
        if end < len {
            text.push(ELLIPSIS);
        }
        Self { start, text }
    }
}

/// `(" 12 | ", "source text")` for a line of a syntax error that shows source.
fn source_line(line: &str) -> Option<(&str, &str)> {
    let bar = line.find(" | ")?;
    let number = line[..bar].trim_start_matches(' ');
    (!number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())).then(|| line.split_at(bar + 3))
}

/// The line under a source line that marks the place: `   | `, then one space
/// (or tab, under a tab) per character before the place, then `^---` or a span
/// `^-----^`.
struct Underline<'a> {
    gutter: &'a str,
    /// ASCII only, so its byte length is the error's 0-based column.
    padding: &'a str,
    marks: &'a str,
}

fn underline(line: &str) -> Option<Underline<'_>> {
    let bar = line.find('|')?;
    if !line[..bar].bytes().all(|b| b == b' ') {
        return None;
    }
    let rest = line[bar + 1..].strip_prefix(' ')?;
    let gutter = &line[..bar + 2];
    let marks = rest.trim_start_matches([' ', '\t']);
    let padding = &rest[..rest.len() - marks.len()];
    (marks.starts_with('^') && marks.bytes().all(|b| b == b'^' || b == b'-')).then_some(Underline {
        gutter,
        padding,
        marks,
    })
}

/// Cuts every run of characters that are neither white space nor `"` (a name
/// is one run) to [`MAX_QUOTED_CHARS`].
fn cap_runs(line: &str) -> String {
    let mut out = String::with_capacity(line.len().min(4 * MAX_MESSAGE_CHARS));
    let mut run = 0usize;
    for c in line.chars() {
        if c.is_whitespace() || c == '"' {
            run = 0;
        } else {
            run += 1;
            if run > MAX_QUOTED_CHARS {
                if run == MAX_QUOTED_CHARS + 1 {
                    out.push(ELLIPSIS);
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Cuts the text between each pair of `"` (a quoted value may hold spaces) to
/// [`MAX_QUOTED_CHARS`].
fn cap_quotes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut parts = line.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (n, part) in parts.enumerate() {
        out.push('"');
        // Odd parts are inside quotes.
        if n % 2 == 0 { out.push_str(&cut(part, MAX_QUOTED_CHARS)) } else { out.push_str(part) }
    }
    out
}

/// `s` cut to `max` characters, with `…` when cut.
fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => s.into(),
        Some((at, _)) => format!("{}{ELLIPSIS}", &s[..at]).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's own message for `query`, and its column.
    fn syntax_error(query: &str) -> (String, usize) {
        let err = async_graphql::parser::parse_query(query).unwrap_err();
        let column = err.positions().next().unwrap().column;
        (err.to_string(), column)
    }

    /// The caret of `message` marks the character right after `before`.
    fn assert_caret_under(message: &str, before: &str) {
        let lines: Vec<&str> = message.lines().collect();
        let source = lines.iter().position(|l| l.contains(before)).expect(message);
        let place = lines[source].find(before).unwrap() + before.len();
        let caret = lines[source + 1].find('^').expect(message);
        assert_eq!(lines[source][..place].chars().count(), lines[source + 1][..caret].chars().count(), "{message}");
        assert!(lines[source + 1].ends_with("^---"), "{message}");
    }

    #[test]
    fn short_messages_are_unchanged() {
        let (message, column) = syntax_error("{ me { id } nope( }");
        assert_eq!(cap_client_text(&message, Some(column)), message);
        let message = r#"Unknown field "nope" on type "Query". Did you mean "me"?"#;
        assert_eq!(cap_client_text(message, None), message);
    }

    #[test]
    fn a_long_source_line_is_quoted_around_the_error() {
        let query = format!("{{ {} nope( }}", "x".repeat(60_000));
        let (message, column) = syntax_error(&query);
        assert!(message.len() > 60_000);
        let capped = cap_client_text(&message, Some(column));
        assert!(capped.chars().count() < 300, "{capped}");
        // The place is still marked: the caret sits under the `}` where a name was expected.
        assert_caret_under(&capped, "nope( ");
        assert!(capped.contains("1 | …xxx") && capped.contains(&format!("--> 1:{column}")), "{capped}");
        assert!(capped.contains("= expected"), "{capped}");
    }

    #[test]
    fn an_error_near_the_start_keeps_the_start() {
        let query = format!("{{ nope( {} }}", "x".repeat(5_000));
        let (message, column) = syntax_error(&query);
        let capped = cap_client_text(&message, Some(column));
        assert!(capped.contains("1 | { nope( xxx"), "{capped}");
        assert!(capped.chars().count() < 300, "{capped}");
    }

    #[test]
    fn names_and_quoted_values_are_cut() {
        let name = "a".repeat(5_000);
        let capped = cap_client_text(&format!(r#"Unknown operation named "{name}""#), None);
        assert_eq!(capped, format!(r#"Unknown operation named "{}…""#, "a".repeat(MAX_QUOTED_CHARS)));
        let capped = cap_client_text(&format!("Variable ${name} is not defined."), None);
        assert_eq!(capped, format!("Variable ${}… is not defined.", "a".repeat(MAX_QUOTED_CHARS - 1)));
        let value = "x ".repeat(5_000);
        let capped = cap_client_text(&format!(r#"enumeration type "Role" does not contain the value "{value}""#), None);
        assert!(capped.starts_with(r#"enumeration type "Role" does not contain the value "x x"#), "{capped}");
        assert!(capped.ends_with("…\"") && capped.chars().count() < 150, "{capped}");
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let capped = cap_client_text(&format!(r#"Unknown field "{}""#, "é".repeat(1000)), None);
        assert!(capped.chars().count() < 120, "{capped}");
        let query = format!("{{ {} nope( }}", "é".repeat(1000));
        let (message, column) = syntax_error(&query);
        assert!(cap_client_text(&message, Some(column)).chars().count() < 300);
    }

    #[test]
    fn tabs_under_tabs_keep_the_caret_in_place() {
        let query = format!("{{\t{} nope( }}", "x\t".repeat(3_000));
        let (message, column) = syntax_error(&query);
        let capped = cap_client_text(&message, Some(column));
        assert_caret_under(&capped, "nope( ");
        assert!(capped.chars().count() < 300, "{capped}");
    }
}
