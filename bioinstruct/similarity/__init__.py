"""Text similarity: ROUGE-L (the filter's and the dataset card's) and sentence embeddings."""
