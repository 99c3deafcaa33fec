//! Integration tests of mesh.users.v1.UsersService: a real gRPC channel to the
//! service on port 0, over real Postgres, a fresh database per test.

mod devices;
mod erasure;
mod flags;
mod harness;
mod links;
mod platform;
mod preferences;
mod users;
mod workspaces;
