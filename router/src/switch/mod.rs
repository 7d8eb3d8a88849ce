//! Sans-IO forwarding: MAC learning, forwarding decisions, flooding.
