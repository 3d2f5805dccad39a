//! TODO(skeleton): filled in by the issue-5 work.
