//! Tombstone's HTTP server: the REST API over the configured collections, key
//! management, health and OpenAPI endpoints, and the background workers.
//!
//! Handlers are thin: they authenticate, parse the request into domain values, call the
//! store (which applies the domain's lifecycle rules inside one transaction) and render
//! the answer. Every error is an [`error::ApiError`] rendered as RFC 9457 problem+json.

pub mod app;
pub mod audit_verify;
pub mod auth;
pub mod error;
pub mod files;
pub mod hub;
pub mod keys;
pub mod lease;
pub mod nats;
pub mod openapi;
pub mod purge;
pub mod request_id;
mod routes;
pub mod search;
pub mod supervise;
pub mod telemetry;
pub mod ui;
pub mod webhooks;

pub use app::{AppState, Workers, router, serve};
