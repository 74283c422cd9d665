//! Task-name validation (submission-time and executor-time check): executors import only the
//! named top-level package from their tasks directory, so names must never be able to escape it.

use crate::error::{CoreError, Result};

/// Longest accepted package / task function name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

/// `package` must be an ASCII identifier, `task_func` a dotted path of identifiers; each at most
/// [`MAX_NAME_LEN`] bytes. Rules out `..`, `/`, absolute paths and empty components.
///
/// # Errors
/// `InvalidGraph` (kind `InvalidTaskName`) naming the offending part.
pub fn validate_task_name(package: &str, task_func: &str) -> Result<()> {
    let err = |msg: String| Err(CoreError::graph("InvalidTaskName", msg));
    if package.len() > MAX_NAME_LEN {
        return err(format!(
            "package name is {} bytes long (at most {MAX_NAME_LEN} allowed)",
            package.len()
        ));
    }
    if !is_identifier(package) {
        return err(format!(
            "package name {package:?} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)"
        ));
    }
    if task_func.len() > MAX_NAME_LEN {
        return err(format!(
            "task function name is {} bytes long (at most {MAX_NAME_LEN} allowed)",
            task_func.len()
        ));
    }
    if !task_func.split('.').all(is_identifier) {
        return err(format!(
            "task function name {task_func:?} is not a dotted path of identifiers"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_identifiers() {
        validate_task_name("pkg", "fn").expect("ok");
        validate_task_name("_p1", "Outer.inner_2").expect("ok");
        validate_task_name(&"a".repeat(255), &"b".repeat(255)).expect("ok");
    }

    #[test]
    fn rejects_bad_names() {
        for (p, f) in [
            ("", "f"),
            ("p", ""),
            ("1p", "f"),
            ("p.q", "f"),
            ("p", "a..b"),
            ("p", ".a"),
            ("p", "a."),
            ("p", "a/b"),
            ("/abs", "f"),
            ("..", "f"),
            ("p", "a-b"),
            ("pé", "f"),
            ("p", "f x"),
        ] {
            let e = validate_task_name(p, f).expect_err(p);
            assert_eq!(e.kind(), "InvalidTaskName");
        }
        assert!(validate_task_name(&"a".repeat(256), "f").is_err());
        assert!(validate_task_name("p", &"b".repeat(256)).is_err());
    }
}
