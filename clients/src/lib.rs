//! brandkms client SDK, officer and participant commands, and the card simulator.
