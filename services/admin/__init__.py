"""Administrative one-shots: `fraudctl init`."""
