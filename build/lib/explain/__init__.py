"""Class-activation maps and review sheets for trained vfrac models."""
