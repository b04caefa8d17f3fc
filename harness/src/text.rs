//! Guest text on its way to a person's terminal or a CI log. What a guest prints is the guest's
//! to choose, a root user's or a broken kernel's included: an escape sequence in an error
//! message could clear the screen, retitle the window or hide the lines before it. Control
//! characters are shown as `\x1b`-style escapes instead; newlines and tabs stay as they are.
//! (A `lab run` job's own output is not text of ours: it goes through byte for byte.)

/// `text` with every control character but `\n` and `\t` written as an escape.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_obeyed_and_lines_and_chinese_stay() {
        assert_eq!(
            printable("\u{1b}[2J\u{1b}]0;pwned\u{7}ok\r\n宿主机\tx\u{85}"),
            "\\x1b[2J\\x1b]0;pwned\\x07ok\\x0d\n宿主机\tx\\x85"
        );
    }
}
