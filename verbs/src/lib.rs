//! The verbs API: devices, protection domains, memory regions (including signature MRs), completion queues, RC queue pairs, work requests and the connection manager, over a provider trait.
