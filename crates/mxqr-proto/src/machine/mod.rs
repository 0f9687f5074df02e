//! State machines of the new and the existing device. OWNER: machine helper.
