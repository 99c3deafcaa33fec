use crate::harness::spawn_app;
