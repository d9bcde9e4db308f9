//! dedup-lab: where does deduplication happen — inside a data system, in the storage under
//! it, or nowhere?
//!
//! The library behind the `dedup-lab` binary: seeded data sets with an exact share of
//! duplicate files ([`dataset`]), data systems behind one trait ([`systems`]), size probes
//! ([`probe`]), the stage-by-stage experiment with its journal ([`experiment`]), statistics
//! and exports ([`results`]), and optional destinations for results ([`sinks`]). See
//! DESIGN.md for the vocabulary and formulas.

pub mod config;
pub mod dataset;
pub mod deploy;
pub mod error;
pub mod experiment;
pub mod journal;
pub mod lab;
pub mod model;
pub mod preflight;
pub mod probe;
pub mod results;
pub mod scan;
pub mod secret;
pub mod sinks;
pub mod systems;
pub mod tls;
