"""svm_models: SVMamba, VMamba and QKFormer built on svm_kernels."""
