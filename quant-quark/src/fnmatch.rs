//! Python's `fnmatch.fnmatchcase`: the glob dialect of `layer_quant_config` keys.
//!
//! `*` matches any run of characters (dots included), `?` one character, `[seq]` one character
//! in the set (ranges `a-z` allowed), `[!seq]` one character outside it. A `[` without a closing
//! `]` is a literal `[`, and a `]` right after `[` or `[!` belongs to the set. Matching is
//! case-sensitive, as on POSIX.

/// One element of a parsed pattern.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
    Set {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    /// Whether this single-character token accepts `c`.
    fn accepts(&self, c: char) -> bool {
        match self {
            Token::Literal(l) => *l == c,
            Token::AnyOne => true,
            Token::AnyRun => unreachable!("`*` is handled by the matcher"),
            Token::Set { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// A compiled `fnmatch` pattern.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern`; every string is a valid pattern.
    pub(crate) fn new(pattern: &str) -> Self {
        Self {
            tokens: parse(pattern),
        }
    }

    /// Whether `name` matches the whole pattern.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let tokens = &self.tokens;
        let name: Vec<char> = name.chars().collect();
        // Greedy matching with backtracking to the last `*`: each `*` only ever needs to grow.
        let (mut t, mut n) = (0, 0);
        let mut resume: Option<(usize, usize)> = None;
        while n < name.len() {
            match tokens.get(t) {
                Some(Token::AnyRun) => {
                    resume = Some((t, n));
                    t += 1;
                }
                Some(token) if token.accepts(name[n]) => {
                    t += 1;
                    n += 1;
                }
                _ => match resume {
                    Some((star, start)) => {
                        t = star + 1;
                        n = start + 1;
                        resume = Some((star, start + 1));
                    }
                    None => return false,
                },
            }
        }
        tokens[t..].iter().all(|token| *token == Token::AnyRun)
    }
}

fn parse(pattern: &str) -> Vec<Token> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                if tokens.last() != Some(&Token::AnyRun) {
                    tokens.push(Token::AnyRun);
                }
            }
            '?' => tokens.push(Token::AnyOne),
            '[' => {
                let mut j = i;
                if j < chars.len() && chars[j] == '!' {
                    j += 1;
                }
                if j < chars.len() && chars[j] == ']' {
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                if j >= chars.len() {
                    tokens.push(Token::Literal('['));
                    continue;
                }
                let mut body = &chars[i..j];
                i = j + 1;
                let negated = body.first() == Some(&'!');
                if negated {
                    body = &body[1..];
                }
                let mut ranges = Vec::new();
                let mut k = 0;
                while k < body.len() {
                    if k + 2 < body.len() && body[k + 1] == '-' {
                        // A reversed range such as `z-a` matches nothing, as in Python.
                        if body[k] <= body[k + 2] {
                            ranges.push((body[k], body[k + 2]));
                        }
                        k += 3;
                    } else {
                        ranges.push((body[k], body[k]));
                        k += 1;
                    }
                }
                tokens.push(Token::Set { negated, ranges });
            }
            other => tokens.push(Token::Literal(other)),
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::Glob;

    /// Cases checked against CPython's `fnmatch.fnmatchcase`.
    #[test]
    fn matches_like_python() {
        let cases: &[(&str, &str, bool)] = &[
            ("model.layers.3.self_attn.q_a_proj", "*.q_a_proj", true),
            ("model.layers.3.self_attn.q_a_proj", "*q_a_proj", true),
            ("model.layers.3.self_attn.q_a_proj", "q_a_proj", false),
            ("model.layers.3.self_attn.q_a_proj", "*.q_a_proj.*", false),
            (
                "model.layers.3.mlp.experts.12.up_proj",
                "*.experts.*.up_proj",
                true,
            ),
            (
                "model.layers.3.mlp.experts.12.up_proj",
                "*.experts.?.up_proj",
                false,
            ),
            (
                "model.layers.3.mlp.experts.1.up_proj",
                "*.experts.?.up_proj",
                true,
            ),
            ("model.layers.3.mlp", "model.layers.[0-2].mlp", false),
            ("model.layers.2.mlp", "model.layers.[0-2].mlp", true),
            ("model.layers.3.mlp", "model.layers.[!0-2].mlp", true),
            ("model.layers.2.mlp", "model.layers.[!0-2].mlp", false),
            ("a]", "a[]]", true),
            ("a]", "a]", true),
            ("]", "[]]", true),
            ("x", "[!]]", true),
            ("]", "[!]]", false),
            ("a[b", "a[b", true),
            ("a-", "a[-x]", true),
            ("ab", "a[z-a]", false),
            ("", "*", true),
            ("", "?", false),
            ("abc", "a**c", true),
            ("abcbd", "a*b?", true),
            ("abcbdx", "a*b?", false),
            ("Model", "model", false),
        ];
        for &(name, pattern, want) in cases {
            assert_eq!(
                Glob::new(pattern).matches(name),
                want,
                "fnmatch({name:?}, {pattern:?})"
            );
        }
    }
}
