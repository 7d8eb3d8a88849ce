//! The io_uring ring wrapper.
