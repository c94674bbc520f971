//! Server observation: scrape Milvus Prometheus endpoints during a test.
