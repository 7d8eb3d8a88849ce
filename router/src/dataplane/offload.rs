//! GSO split and GRO coalesce of TCP super-frames.
