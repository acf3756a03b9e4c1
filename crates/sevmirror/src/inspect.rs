//! `sevmirror inspect`: the footer GUID table of a firmware image, as text or JSON.

use crate::cli::InspectArgs;
use anyhow::Context;

/// Prints the table of `args.file`.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let image = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let report = fwtable::report(&image)
        .with_context(|| format!("{} has no usable firmware GUID table", args.file.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.to_string().trim_end());
    }
    Ok(())
}
