//! The small unsafe layer: TAP devices, socket options, control messages.
