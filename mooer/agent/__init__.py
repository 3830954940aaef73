"""Live sessions: voice activity, partial/final results, conversation memory, barge-in."""
