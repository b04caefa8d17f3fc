//! Guest text on its way to a person's terminal or a CI log. What a guest prints is the guest's
//! to choose, a root user's or a broken kernel's included: an escape sequence in an error
//! message could clear the screen, retitle the window or hide the lines before it. Control
//! characters are shown as `\x1b`-style escapes instead; newlines and tabs stay as they are.
//! (A `lab run` job's own output is not text of ours: it goes through byte for byte.)

/// Splits bytes that come in pieces (reads of a socket, a stream's chunks) into lines, however
/// they were cut, in bounded memory: a line longer than its limit is cut to it.
#[derive(Debug)]
pub struct LineCutter {
    partial: Vec<u8>,
    limit: usize,
}

impl LineCutter {
    /// Lines of at most `limit` bytes (without their newline).
    pub fn new(limit: usize) -> Self {
        Self {
            partial: Vec::new(),
            limit,
        }
    }

    /// Takes `data`, calling `line` with each line it completes.
    pub fn feed(&mut self, data: &[u8], mut line: impl FnMut(&[u8])) {
        let mut rest = data;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            self.take(&rest[..end]);
            line(&self.partial);
            self.partial.clear();
            rest = &rest[end + 1..];
        }
        self.take(rest);
    }

    /// What came after the last newline, taken.
    pub fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }

    fn take(&mut self, piece: &[u8]) {
        let room = self.limit.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&piece[..piece.len().min(room)]);
    }
}

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
