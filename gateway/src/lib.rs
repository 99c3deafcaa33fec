//! The webhook gateway. Not built yet; the crate holds its place in the workspace.
