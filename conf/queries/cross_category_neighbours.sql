-- Neighbours whose masterCategory differs from the product's: look-alikes across classes,
-- most similar first (candidates for mislabelled products, or for cross-selling).
--   ./spark-submit.sh sql file=conf/queries/cross_category_neighbours.sql
SELECT n.product_id,
       q.display_name AS product,
       q.master_category AS product_category,
       n.rank,
       n.neighbour_id,
       c.display_name AS neighbour,
       c.master_category AS neighbour_category,
       round(n.score, 4) AS score
FROM neighbours n
JOIN products q ON q.product_id = n.product_id
JOIN products c ON c.product_id = n.neighbour_id
WHERE q.master_category <> c.master_category
ORDER BY n.score DESC, n.product_id, n.rank
