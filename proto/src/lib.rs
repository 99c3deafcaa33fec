//! The mesh's gRPC API, generated from `proto/mesh/**.proto`.
//!
//! One module per package (`mesh::users::v1`, ...), and the file descriptor set
//! that every service registers with server reflection.

pub mod mesh {
    pub mod billing {
        pub mod v1 {
            tonic::include_proto!("mesh.billing.v1");
        }
    }
    pub mod conversations {
        pub mod v1 {
            tonic::include_proto!("mesh.conversations.v1");
        }
    }
    pub mod memory {
        pub mod v1 {
            tonic::include_proto!("mesh.memory.v1");
        }
    }
    pub mod scheduler {
        pub mod v1 {
            tonic::include_proto!("mesh.scheduler.v1");
        }
    }
    pub mod users {
        pub mod v1 {
            tonic::include_proto!("mesh.users.v1");
        }
    }
}

/// Every mesh proto and its imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mesh_descriptor");
