//! Transport (wip).
