//! The conversations context. Its service is not built yet; the crate holds its place in the workspace.
