//! Route handlers, one module per resource.

pub(crate) mod audit;
pub(crate) mod collections;
pub(crate) mod deletions;
pub(crate) mod events;
pub(crate) mod extract;
pub(crate) mod files;
pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod keys;
pub(crate) mod records;
pub(crate) mod retention;
pub(crate) mod webhooks;
pub(crate) mod whoami;
