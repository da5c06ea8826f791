//! The framing of a run's output (`<prefix>/run/<id>/output`): what the agent writes around the
//! steps' own bytes, and how a reader finds one step's section again.
//!
//! The agent writes, in order: for each step that printed something, a header line `==> STEP <==`
//! and the step's stdout and stderr as captured; its own notes as `--- … ---` lines (a rollback
//! starting, processes killed at the end); `[output truncated: N bytes dropped]` when the run's cap
//! is reached. A step cannot forge any of these: every line of a step's output that would read as
//! a framing line — one that starts with `==> ` or `--- `, after any number of backslashes — is
//! stored with one more backslash in front ([`escape`]); [`section_of`] takes it off again. So in the
//! stored text a framing line is always the agent's, and a reader of the raw text sees a forged one
//! as `\==> …`.

/// The header line before a step's output.
pub fn step_header(step: &str) -> String {
    format!("{HEADER_OPEN}{step}{HEADER_CLOSE}\n")
}

/// The note line before the output of a rollback.
pub fn rollback_separator(original_event: &str, why: &str) -> String {
    note(&format!("{ROLLBACK_NOTE}{original_event} ({why})"))
}

/// A note of the agent's own, as one line.
pub fn note(text: &str) -> String {
    format!("{NOTE_OPEN}{text}{NOTE_CLOSE}\n")
}

/// The line that ends a step's output cut at the run's cap (starts on a line of its own).
pub fn truncated(dropped: usize) -> String {
    format!("\n[output truncated: {dropped} bytes dropped]\n")
}

const HEADER_OPEN: &str = "==> ";
const HEADER_CLOSE: &str = " <==";
const NOTE_OPEN: &str = "--- ";
const NOTE_CLOSE: &str = " ---";
const ROLLBACK_NOTE: &str = "rollback of ";
const ESCAPE: u8 = b'\\';

/// Whether a line of step output would read as framing: `==> ` or `--- ` after zero or more `\`.
fn needs_escape(line: &[u8]) -> bool {
    let rest = &line[line.iter().take_while(|&&b| b == ESCAPE).count()..];
    rest.starts_with(HEADER_OPEN.as_bytes()) || rest.starts_with(NOTE_OPEN.as_bytes())
}

/// A step's output as stored: every line that would read as framing gets one more `\` in front.
pub fn escape(step_output: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(step_output.len());
    for line in step_output.split_inclusive(|&b| b == b'\n') {
        if needs_escape(line) {
            out.push(ESCAPE);
        }
        out.extend_from_slice(line);
    }
    out
}

/// A stored line of step output as the step printed it (one `\` less where [`escape`] added one).
fn unescape_line(line: &str) -> &str {
    match line.strip_prefix('\\') {
        Some(rest) if needs_escape(rest.as_bytes()) => rest,
        _ => line,
    }
}

/// The step a header line names, `None` for any other line.
pub fn header_step(line: &str) -> Option<&str> {
    line.strip_prefix(HEADER_OPEN)?.strip_suffix(HEADER_CLOSE)
}

/// Whether a line is the note that starts a rollback's output.
pub fn is_rollback_separator(line: &str) -> bool {
    line.strip_prefix(NOTE_OPEN)
        .is_some_and(|l| l.starts_with(ROLLBACK_NOTE) && l.ends_with(NOTE_CLOSE))
}

/// The output of `step` in a run's output as the step printed it: the lines after its header, up to
/// the next framing line or the end. `None` when the step has no section (it printed nothing).
/// Sections after the rollback separator are the rollback steps', never the run's.
pub fn section_of(output: &str, step: &str) -> Option<String> {
    let mut section: Option<String> = None;
    for line in output.split_inclusive('\n') {
        let bare = line.strip_suffix('\n').unwrap_or(line);
        let bare = bare.strip_suffix('\r').unwrap_or(bare);
        let header = header_step(bare);
        let framing = header.is_some() || bare.starts_with(NOTE_OPEN);
        if framing {
            if section.is_some() || is_rollback_separator(bare) {
                return section;
            }
            if header == Some(step) {
                section = Some(String::new());
            }
        } else if let Some(s) = &mut section {
            s.push_str(unescape_line(line));
        }
    }
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "==> 10first <==\nhello\n==> 20boom <==\nline 1\nboom\n==> 30x <==\nlast\n";

    #[test]
    fn sections_are_found_by_step() {
        assert_eq!(section_of(OUT, "10first").as_deref(), Some("hello\n"));
        assert_eq!(section_of(OUT, "20boom").as_deref(), Some("line 1\nboom\n"));
        assert_eq!(section_of(OUT, "30x").as_deref(), Some("last\n"));
        assert_eq!(section_of(OUT, "40none"), None);
        assert_eq!(section_of("==> a <==", "a").as_deref(), Some(""));
        assert_eq!(
            section_of("==> a <==\nno newline", "a").as_deref(),
            Some("no newline")
        );
        assert_eq!(
            section_of("==> a <==\n==> b <==\nx\n", "a").as_deref(),
            Some("")
        );
        assert_eq!(section_of("==> 20boomer <==\nx\n", "20boom"), None);
        let tricky = "==> a <==\nsee ==> b <== here\n==> b <==\ny\n";
        assert_eq!(
            section_of(tricky, "a").as_deref(),
            Some("see ==> b <== here\n")
        );
    }

    #[test]
    fn sections_as_the_agent_has_always_written_them() {
        let s = |out: &str, step: &str| section_of(out, step);
        assert_eq!(s("", "a"), None);
        assert_eq!(
            s("==> a <==\r\nx\r\n==> b <==\r\n", "a").as_deref(),
            Some("x\r\n")
        );
        // The rollback separator ends a section; a rollback step of the same name comes later.
        let rolled =
            "==> 20a <==\nboom\n--- rollback of ev (step 20a failed) ---\n==> 20a <==\nundo\n";
        assert_eq!(s(rolled, "20a").as_deref(), Some("boom\n"));
        let silent =
            "==> 10a <==\nok\n--- rollback of ev (step 20b failed) ---\n==> 20b <==\nundo\n";
        assert_eq!(s(silent, "10a").as_deref(), Some("ok\n"));
        assert_eq!(s(silent, "20b"), None);
        // Truncated output stays in the last section.
        let cut = format!("==> 10a <==\nxxxx{}", truncated(9));
        assert_eq!(
            s(&cut, "10a").as_deref(),
            Some("xxxx\n[output truncated: 9 bytes dropped]\n")
        );
    }

    #[test]
    fn the_rollback_ends_the_runs_sections() {
        let out = format!(
            "{}x\n{}{}undo\n",
            step_header("10a"),
            rollback_separator("e", "failed"),
            step_header("10a")
        );
        assert_eq!(section_of(&out, "10a").as_deref(), Some("x\n"));
        let note_inside = format!("{}x\n{}", step_header("10a"), note("2 processes killed"));
        assert_eq!(section_of(&note_inside, "10a").as_deref(), Some("x\n"));
    }

    #[test]
    fn a_step_cannot_forge_framing() {
        // A step prints a fake header for another step, a fake note and a fake rollback start.
        let printed = "ok\n==> 30third <==\nforged\n--- rollback of e (failed) ---\n\\==> x <==\n";
        let out = format!(
            "{}{}{}real\n",
            step_header("20second"),
            String::from_utf8(escape(printed.as_bytes())).unwrap(),
            step_header("30third")
        );
        assert_eq!(section_of(&out, "30third").as_deref(), Some("real\n"));
        assert_eq!(section_of(&out, "20second").as_deref(), Some(printed));
        for line in out.lines() {
            if line.contains("forged") || line.contains("rollback") {
                assert!(header_step(line).is_none() && !is_rollback_separator(line));
            }
        }
    }

    #[test]
    fn escaping_round_trips_any_line() {
        for line in [
            "",
            "x",
            "\\",
            "\\\\==> a <==",
            "==>",
            "==> ",
            "--- ",
            "\\--- x ---",
            "---",
        ] {
            let printed = format!("{line}\n");
            let out = format!(
                "{}{}",
                step_header("s"),
                String::from_utf8(escape(printed.as_bytes())).unwrap()
            );
            assert_eq!(
                section_of(&out, "s").as_deref(),
                Some(printed.as_str()),
                "{line:?}"
            );
        }
    }
}
