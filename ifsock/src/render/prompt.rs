//! Questions asked on the terminal before a command changes anything.

/// Prints `lines` (escaped, as every human line) and `proceed? [y/N]` on stderr and reads the
/// answer from the terminal (without blocking the runtime). `Ok(true)` only for `y`/`yes`.
///
/// # Errors
/// stdin could not be read.
pub async fn ask_proceed(lines: &[String]) -> anyhow::Result<bool> {
    use anyhow::Context as _;
    for l in lines {
        super::err_line(l);
    }
    eprint!("proceed? [y/N] ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("reading the confirmation")?
    .context("reading the confirmation from stdin")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES"))
}
