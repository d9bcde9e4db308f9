//! Running dedup-lab where the users' data lives: the Kubernetes objects that run an
//! experiment's shards as an Indexed Job and merge them ([`k8s`]). The CI examples that run
//! shards as parallel jobs are files under `docs/ci/`; the image is built from the
//! repository's `Containerfile`.

pub mod k8s;
