-- A product's neighbours, most similar first, with their names and categories.
-- params: product_id
--   ./spark-submit.sh sql file=conf/queries/product_neighbours.sql params.product_id=15970
SELECT n.rank,
       n.neighbour_id,
       round(n.score, 4) AS score,
       p.display_name,
       p.master_category,
       p.sub_category,
       p.article_type,
       p.base_colour
FROM neighbours n
JOIN products p ON p.product_id = n.neighbour_id
WHERE n.product_id = :product_id
ORDER BY n.rank
