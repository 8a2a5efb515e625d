"""Reports of many runs: statistics (confidence intervals, McNemar), tables, figures, pictures of faces (misclassified
images, Grad-CAM), the report document and the pipeline's Table 2 summary."""
