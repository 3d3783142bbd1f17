//! Options of `ifsock doctor`.

/// Options of `doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}
