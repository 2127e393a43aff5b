//! `umbra generate-docs DIR`: man pages (clap_mangen) and shell
//! completions (clap_complete) generated from the clap definitions, so
//! they cannot drift from the CLI. The repository keeps them under `doc/`;
//! `tests/daemon_cli.rs` regenerates them and fails when they differ.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct GenerateDocs {
    /// Where to write `man/*.1` and `completions/` (umbra.bash, _umbra, umbra.fish)
    dir: PathBuf,
}

pub fn run(a: GenerateDocs) -> Result<()> {
    let cmd = super::Cli::command();
    let man = a.dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    write_man(&cmd, "umbra", &man)?;
    let comp = a.dir.join("completions");
    std::fs::create_dir_all(&comp).with_context(|| format!("creating {}", comp.display()))?;
    for (shell, file) in [
        (Shell::Bash, "umbra.bash"),
        (Shell::Zsh, "_umbra"),
        (Shell::Fish, "umbra.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "umbra", &mut buf);
        write(&comp.join(file), &buf)?;
    }
    Ok(())
}

/// A page for `cmd` named `name` (`umbra-volume-create`), then one per
/// visible subcommand.
fn write_man(cmd: &clap::Command, name: &str, dir: &Path) -> Result<()> {
    let named = cmd
        .clone()
        .name(name.to_owned())
        .bin_name(name.replace('-', " "));
    let mut buf = Vec::new();
    clap_mangen::Man::new(named)
        .render(&mut buf)
        .with_context(|| format!("rendering the man page of {name}"))?;
    write(&dir.join(format!("{name}.1")), &buf)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_man(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}
