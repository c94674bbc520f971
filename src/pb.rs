//! Generated protobuf and gRPC code.

/// The subset of the Milvus wire API Stampede uses (`proto/milvus/`).
pub mod milvus {
    #![allow(clippy::all, missing_docs)]
    /// `milvus.proto.common`.
    pub mod common {
        tonic::include_proto!("milvus.proto.common");
    }
    /// `milvus.proto.schema`.
    pub mod schema {
        tonic::include_proto!("milvus.proto.schema");
    }
    /// `milvus.proto.milvus` (MilvusService).
    pub mod service {
        tonic::include_proto!("milvus.proto.milvus");
    }
}

/// Stampede's own gRPC API (`proto/stampede/v1/`): the load worker's service.
pub mod stampede_v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("stampede.v1");
}
