"""Task distributions: IOI and Greater-Than, their counterfactuals and poisoned variants."""
