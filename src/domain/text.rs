//! Text a person reads (an objective, a reason, evidence): it must display as what
//! it says. And how an error quotes a value: a short, escaped prefix, so that a
//! refusal never carries (or hides) what it refuses.
//!
//! Refused in every such text:
//! - control characters (Unicode category Cc: C0, DEL, C1), except line feed and
//!   tab in text of several lines (an objective); a carriage return is refused
//!   everywhere, since a terminal shows it by overwriting the line;
//! - format characters (category Cf, Unicode 16.0): bidirectional embeddings,
//!   overrides, isolates and marks, zero-width spaces and joiners, the byte-order
//!   mark, the soft hyphen, tag characters;
//! - line and paragraph separators (U+2028, U+2029);
//! - what renders as nothing though Unicode classes it a letter or a mark: the
//!   combining grapheme joiner, Hangul fillers, the Khmer inherent vowels, and the
//!   whole of U+E0000..U+E0FFF (tags and supplementary variation selectors, used to
//!   smuggle text past a reader).
//!
//! Accepted: every other letter, mark, number, symbol and space of any script
//! (a right-to-left script gets its direction from its letters, not from control
//! characters), and the variation selectors U+FE00..U+FE0F, which only choose a
//! glyph for the character before them (an emoji needs U+FE0F).
use std::fmt;

/// How many characters of a value an error quotes.
pub const QUOTED_CHARS: usize = 32;

/// Whether a text may span lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// One line: no line feed, no tab (a reason, evidence, a name).
    One,
    /// Lines separated by line feeds, tabs allowed (an objective).
    Many,
}

/// Why a text was refused. The message follows the field name:
/// `objective: contains U+202E (RIGHT-TO-LEFT OVERRIDE) at character 14; ...`.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TextError {
    #[error("is longer than {max} bytes")]
    TooLong { max: usize },
    /// `at` counts characters (Unicode scalar values) from 1.
    #[error(
        "contains {} at character {at}; invisible and bidirectional control characters are not accepted",
        Described(*.ch)
    )]
    Hidden { ch: char, at: usize },
    #[error(
        "contains {} at character {at}; this field is one line: line breaks and tabs are not accepted",
        Described(*.ch)
    )]
    LineBreak { ch: char, at: usize },
}

/// Checks a text a person will read: at most `max` bytes, nothing hidden (see the
/// module documentation), and one line unless `lines` is [`Lines::Many`]. The
/// empty text passes: whether a field is required is the caller's rule.
pub fn check(s: &str, max: usize, lines: Lines) -> Result<(), TextError> {
    if s.len() > max {
        return Err(TextError::TooLong { max });
    }
    for (i, ch) in s.chars().enumerate() {
        let at = i + 1;
        if ch == '\n' || ch == '\t' {
            if lines == Lines::One {
                return Err(TextError::LineBreak { ch, at });
            }
        } else if is_hidden(ch) {
            return Err(TextError::Hidden { ch, at });
        }
    }
    Ok(())
}

/// True for a character that displays as nothing, or changes how the text
/// around it displays, rather than showing itself: the characters [`check`]
/// refuses (line feed and tab included). For displaying text that was stored
/// before the rule, escaped.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || is_format(c)
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{3164}'
                | '\u{FFA0}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// Unicode general category Cf (format), as of Unicode 16.0.
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// The Unicode name of the hidden characters people meet most, to say in a
/// refusal what was found; the others are described by their kind.
fn name(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{0000}' => "NULL",
        '\u{0007}' => "BELL",
        '\u{0008}' => "BACKSPACE",
        '\u{0009}' => "CHARACTER TABULATION",
        '\u{000A}' => "LINE FEED",
        '\u{000B}' => "LINE TABULATION",
        '\u{000C}' => "FORM FEED",
        '\u{000D}' => "CARRIAGE RETURN",
        '\u{001B}' => "ESCAPE",
        '\u{007F}' => "DELETE",
        '\u{0085}' => "NEXT LINE",
        '\u{009B}' => "CONTROL SEQUENCE INTRODUCER",
        '\u{00AD}' => "SOFT HYPHEN",
        '\u{034F}' => "COMBINING GRAPHEME JOINER",
        '\u{061C}' => "ARABIC LETTER MARK",
        '\u{115F}' => "HANGUL CHOSEONG FILLER",
        '\u{1160}' => "HANGUL JUNGSEONG FILLER",
        '\u{180E}' => "MONGOLIAN VOWEL SEPARATOR",
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{200C}' => "ZERO WIDTH NON-JOINER",
        '\u{200D}' => "ZERO WIDTH JOINER",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{2028}' => "LINE SEPARATOR",
        '\u{2029}' => "PARAGRAPH SEPARATOR",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2060}' => "WORD JOINER",
        '\u{2061}' => "FUNCTION APPLICATION",
        '\u{2062}' => "INVISIBLE TIMES",
        '\u{2063}' => "INVISIBLE SEPARATOR",
        '\u{2064}' => "INVISIBLE PLUS",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        '\u{3164}' => "HANGUL FILLER",
        '\u{FEFF}' => "ZERO WIDTH NO-BREAK SPACE",
        '\u{FFA0}' => "HALFWIDTH HANGUL FILLER",
        '\u{E0001}' => "LANGUAGE TAG",
        '\u{E007F}' => "CANCEL TAG",
        _ => return None,
    })
}

/// A character as a refusal names it: `U+202E (RIGHT-TO-LEFT OVERRIDE)`.
#[derive(Debug, Clone, Copy)]
pub struct Described(pub char);

impl fmt::Display for Described {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        let kind = match c {
            _ if name(c).is_some() => "",
            _ if c.is_control() => "a control character",
            '\u{E0020}'..='\u{E007E}' => "a tag character",
            '\u{E0100}'..='\u{E01EF}' => "a variation selector",
            '\u{E0000}'..='\u{E0FFF}' => "a reserved invisible character",
            _ if is_format(c) => "a format character",
            _ => "an invisible character",
        };
        write!(f, "U+{:04X} ({})", u32::from(c), name(c).unwrap_or(kind))
    }
}

/// A value as an error quotes it: in double quotes, escaped like Rust's `{:?}`
/// (and every hidden character escaped too), at most [`QUOTED_CHARS`] characters
/// of it, cut on a character boundary and followed by an ellipsis and the length
/// in bytes when it is longer: `"xxxx…" (20480 bytes)`. A refusal stays short
/// whatever it refuses (a 20 KB value in a gRPC status would not reach the client)
/// and shows what it quotes as it is.
pub fn quote(s: &str) -> String {
    let cut = s.char_indices().nth(QUOTED_CHARS).map(|(i, _)| i);
    let shown = &s[..cut.unwrap_or(s.len())];
    // `{:?}` escapes controls, format characters and separators; not the fillers.
    let mut out: String = format!("{shown:?}")
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if is_hidden(c) {
                c.escape_unicode().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    if cut.is_some() {
        out.pop();
        out.push_str(&format!("…\" ({} bytes)", s.len()));
    }
    out
}

/// A time as people and tools read it in messages: RFC 3339, UTC.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A single character as an error quotes it: `'x'`, escaped like [`quote`].
pub fn quote_char(c: char) -> String {
    if is_hidden(c) {
        format!("'{}'", c.escape_unicode())
    } else {
        format!("{c:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_of_any_script_passes() {
        for s in [
            "answer ticket 4711 about an EU customer's invoice",
            "Frau Müller: Rechnung über 40 € (Zahlung verspätet)",
            "سؤال عن الفاتورة رقم ٤٧١١",
            "שאלה על חשבונית",
            "請求書について 질문 ✔️ 👍🏽",
            "",
        ] {
            assert_eq!(check(s, 4096, Lines::One), Ok(()), "{s}");
        }
    }

    #[test]
    fn bidirectional_controls_are_refused_with_their_name_and_position() {
        let err = check("Refund order \u{202E}4711", 4096, Lines::Many).unwrap_err();
        assert_eq!(
            err,
            TextError::Hidden {
                ch: '\u{202E}',
                at: 14
            }
        );
        assert_eq!(
            err.to_string(),
            "contains U+202E (RIGHT-TO-LEFT OVERRIDE) at character 14; invisible and bidirectional control characters are not accepted"
        );
        for c in ('\u{202A}'..='\u{202E}')
            .chain('\u{2066}'..='\u{2069}')
            .chain(['\u{200E}', '\u{200F}', '\u{061C}'])
        {
            assert!(
                matches!(check(&format!("a{c}b"), 64, Lines::Many), Err(TextError::Hidden { ch, at: 2 }) if ch == c),
                "U+{:04X}",
                u32::from(c)
            );
        }
    }

    #[test]
    fn the_position_counts_characters_not_bytes() {
        assert_eq!(
            check("Müller €\u{200B}", 64, Lines::One),
            Err(TextError::Hidden {
                ch: '\u{200B}',
                at: 9
            })
        );
    }

    #[test]
    fn every_format_character_and_invisible_filler_is_refused() {
        let hidden = [
            '\u{00AD}',
            '\u{0600}',
            '\u{0605}',
            '\u{06DD}',
            '\u{070F}',
            '\u{0890}',
            '\u{08E2}',
            '\u{180E}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{2064}',
            '\u{206A}',
            '\u{206F}',
            '\u{FEFF}',
            '\u{FFF9}',
            '\u{FFFB}',
            '\u{110BD}',
            '\u{110CD}',
            '\u{13430}',
            '\u{1343F}',
            '\u{1BCA0}',
            '\u{1D173}',
            '\u{1D17A}',
            '\u{E0001}',
            '\u{E0020}',
            '\u{E0041}',
            '\u{E007F}',
            '\u{E0100}',
            '\u{E01EF}',
            '\u{2028}',
            '\u{2029}',
            '\u{034F}',
            '\u{115F}',
            '\u{1160}',
            '\u{3164}',
            '\u{FFA0}',
            '\u{17B4}',
            '\u{17B5}',
        ];
        for c in hidden {
            assert!(is_hidden(c), "U+{:04X}", u32::from(c));
            assert!(
                check(&c.to_string(), 64, Lines::Many).is_err(),
                "U+{:04X}",
                u32::from(c)
            );
        }
    }

    #[test]
    fn control_characters_are_refused_but_an_objective_keeps_its_lines() {
        for c in ('\u{0}'..='\u{1F}').chain('\u{7F}'..='\u{9F}') {
            let in_one_line = check(&format!("a{c}"), 64, Lines::One).unwrap_err();
            match c {
                '\n' | '\t' => {
                    assert_eq!(in_one_line, TextError::LineBreak { ch: c, at: 2 });
                    assert_eq!(check(&format!("a{c}"), 64, Lines::Many), Ok(()));
                }
                _ => {
                    assert_eq!(in_one_line, TextError::Hidden { ch: c, at: 2 });
                    assert!(check(&format!("a{c}"), 64, Lines::Many).is_err());
                }
            }
        }
        assert_eq!(
            check("reason\nnext", 64, Lines::One)
                .unwrap_err()
                .to_string(),
            "contains U+000A (LINE FEED) at character 7; this field is one line: line breaks and tabs are not accepted"
        );
        assert_eq!(
            check("pay 10\rpay 9999", 64, Lines::Many).unwrap_err(),
            TextError::Hidden { ch: '\r', at: 7 }
        );
    }

    #[test]
    fn variation_selectors_that_choose_a_glyph_are_accepted() {
        // ❤️ is U+2764 U+FE0F; text presentation is U+FE0E.
        for s in ["\u{2764}\u{FE0F}", "\u{2764}\u{FE0E}", "\u{845B}\u{FE00}"] {
            assert_eq!(check(s, 64, Lines::One), Ok(()), "{s:?}");
        }
    }

    #[test]
    fn a_text_over_its_limit_is_refused_before_it_is_read() {
        assert_eq!(
            check(&"a".repeat(65), 64, Lines::One),
            Err(TextError::TooLong { max: 64 })
        );
        assert_eq!(check(&"a".repeat(64), 64, Lines::One), Ok(()));
    }

    #[test]
    fn characters_without_a_listed_name_are_described_by_kind() {
        assert_eq!(
            Described('\u{0001}').to_string(),
            "U+0001 (a control character)"
        );
        assert_eq!(
            Described('\u{E0041}').to_string(),
            "U+E0041 (a tag character)"
        );
        assert_eq!(
            Described('\u{E0100}').to_string(),
            "U+E0100 (a variation selector)"
        );
        assert_eq!(
            Described('\u{0600}').to_string(),
            "U+0600 (a format character)"
        );
        assert_eq!(
            Described('\u{17B4}').to_string(),
            "U+17B4 (an invisible character)"
        );
        assert_eq!(
            Described('\u{E0000}').to_string(),
            "U+E0000 (a reserved invisible character)"
        );
    }

    #[test]
    fn a_short_value_is_quoted_whole_and_escaped() {
        assert_eq!(quote("nope"), "\"nope\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
        assert_eq!(quote("a\u{202E}b"), "\"a\\u{202e}b\"");
        // A filler `{:?}` leaves as it is is escaped too.
        assert_eq!(quote("a\u{3164}b"), "\"a\\u{3164}b\"");
        assert_eq!(
            quote(&"x".repeat(QUOTED_CHARS)),
            format!("\"{}\"", "x".repeat(32))
        );
    }

    #[test]
    fn a_long_value_is_quoted_as_a_prefix_with_its_length() {
        let q = quote(&"x".repeat(20 * 1024));
        assert_eq!(q, format!("\"{}…\" (20480 bytes)", "x".repeat(32)));
        // Cut on a character boundary, whatever the characters' width.
        let wide = "€".repeat(100);
        assert_eq!(quote(&wide), format!("\"{}…\" (300 bytes)", "€".repeat(32)));
        let emoji = "👍".repeat(33);
        assert_eq!(
            quote(&emoji),
            format!("\"{}…\" (132 bytes)", "👍".repeat(32))
        );
        // Escapes do not count against the prefix, but stay bounded.
        let hidden = "\u{202E}".repeat(10_000);
        assert!(quote(&hidden).len() < 32 * 10 + 32, "{}", quote(&hidden));
    }

    #[test]
    fn a_character_is_quoted_like_a_value() {
        assert_eq!(quote_char(' '), "' '");
        assert_eq!(quote_char('?'), "'?'");
        assert_eq!(quote_char('\u{202E}'), "'\\u{202e}'");
        assert_eq!(quote_char('\u{3164}'), "'\\u{3164}'");
    }
}
