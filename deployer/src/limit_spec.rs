pub use zael_core::limit_spec::*;
