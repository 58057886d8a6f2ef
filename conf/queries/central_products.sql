-- The most central products: most often in someone else's top k (hubs of the catalogue).
--   ./spark-submit.sh sql file=conf/queries/central_products.sql
SELECT n.neighbour_id AS product_id,
       p.display_name,
       p.master_category,
       p.article_type,
       count(*) AS times_a_neighbour,
       round(avg(n.score), 4) AS mean_score
FROM neighbours n
JOIN products p ON p.product_id = n.neighbour_id
GROUP BY n.neighbour_id, p.display_name, p.master_category, p.article_type
ORDER BY times_a_neighbour DESC, product_id
LIMIT 20
