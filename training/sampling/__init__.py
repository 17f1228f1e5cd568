"""Images from a model: a subject over prompt sets (`generate`) and class images (`regularize`)."""
