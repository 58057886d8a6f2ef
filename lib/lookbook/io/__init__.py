"""Tables, the catalogue, images and styles.csv."""

# The Spark conf key naming the table engine: here, so that spark-submit's options are
# derived without importing Spark, pyarrow or delta-rs (every job's start pays for them).
ENGINE_CONF = "spark.lookbook.table_engine"
