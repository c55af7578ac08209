"""Reading and checking the input records, their labels, OCR text and the K-fold split; accounting
for every record."""
