//! `shadowlab merge DIR… --out DIR`: joins the shard folders of one run into one run folder.
//! Refuses shards of different commits or matrices, a shard given twice, and incomplete shards;
//! keeps each shard's host in the manifest, and shard 1's instruction counts (`callgrind.json`:
//! only shard 1 makes them).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::DriverError;
use crate::results::{self, Status};

/// Options of `shadowlab merge`.
#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The shard folders.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// The merged run's folder (must not exist).
    #[arg(long)]
    out: PathBuf,
}

/// Runs `shadowlab merge`.
pub fn run(args: &MergeArgs) -> ExitCode {
    match inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shadowlab merge: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn inner(args: &MergeArgs) -> Result<(), DriverError> {
    let loaded = args
        .dirs
        .iter()
        .map(|d| results::load(d, true))
        .collect::<Result<Vec<_>, _>>()?;
    let first = &loaded[0];
    let mut manifest = first.manifest.clone();
    manifest.hosts.clear();
    manifest.shards.clear();
    let mut samples = Vec::new();
    for l in &loaded {
        let m = &l.manifest;
        if m.source != first.manifest.source {
            return Err(DriverError::Mismatch(format!(
                "{} is of commit {} ({}), {} of {} ({})",
                l.dir.display(),
                m.source.commit,
                m.source.dirty_hash,
                first.dir.display(),
                first.manifest.source.commit,
                first.manifest.source.dirty_hash
            )));
        }
        if m.matrix != first.manifest.matrix {
            return Err(DriverError::Mismatch(format!(
                "{} ran another matrix than {}",
                l.dir.display(),
                first.dir.display()
            )));
        }
        for s in &m.shards {
            if manifest.shards.contains(s) {
                return Err(DriverError::Mismatch(format!("shard {s} is given twice")));
            }
            manifest.shards.push(*s);
        }
        if m.shards.is_empty() && loaded.len() > 1 {
            return Err(DriverError::Mismatch(format!(
                "{} is an unsharded run",
                l.dir.display()
            )));
        }
        manifest.hosts.extend(m.hosts.iter().cloned());
        samples.extend(l.samples.iter().cloned());
    }
    manifest.shards.sort_by_key(|s| s.k);
    manifest.run_id = args.out.file_name().map_or_else(
        || manifest.run_id.clone(),
        |n| n.to_string_lossy().into_owned(),
    );
    manifest.status = Status::Complete;
    // Shard 1's counts (read before the folder is made: a corrupt file leaves nothing behind).
    let callgrind = match loaded
        .iter()
        .find(|l| crate::callgrind_pass::counts_here(l.manifest.shards.first().copied()))
    {
        Some(l) => results::read_callgrind(&l.dir)?,
        None => None,
    };
    results::create_run_dir(&args.out)?;
    results::write_atomic(
        &args.out,
        results::SAMPLES,
        &results::samples_csv(&samples)?,
    )?;
    let summary = crate::summary::summarise(&samples, Status::Complete, manifest.matrix.seed);
    results::write_json(&args.out, results::SUMMARY, &summary)?;
    if let Some(record) = &callgrind {
        results::write_json(&args.out, results::CALLGRIND, record)?;
    }
    results::write_json(&args.out, results::MANIFEST, &manifest)?;
    let n = manifest.shards.first().map_or(1, |s| s.n) as usize;
    if manifest.shards.len() < n {
        eprintln!(
            "shadowlab merge: note: {} of {n} shards merged",
            manifest.shards.len()
        );
    }
    print!("{}", crate::summary::table(&summary));
    println!(
        "merged {} folders into {}",
        loaded.len(),
        args.out.display()
    );
    Ok(())
}
